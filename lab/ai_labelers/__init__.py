"""AI labelers (RLAIF): ``services`` (create, run), ``selectors`` (specs, scorers, idle reasons)."""
