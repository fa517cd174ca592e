"""Collect, compare, judge and show: tables, verdicts, the HTML page, figures."""
