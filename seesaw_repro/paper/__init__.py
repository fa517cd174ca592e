"""The paper as data: recipes (what each table runs), method specs, presets and the
mmdet configs they resolve to."""
