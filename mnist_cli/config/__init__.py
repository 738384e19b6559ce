"""The configuration: the typed schema, composing conf/*.yaml, the checks, and old runs' configs."""
