"""Run folders, the config machinery and the experiment registry."""
