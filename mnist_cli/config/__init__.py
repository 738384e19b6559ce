"""The configuration, one concept a module: schema (the typed dataclasses), compose (conf/*.yaml with
overrides), checks (what each command refuses), hydra_refusals (Hydra's errors as sentences: the one
adapter for their text), compatibility (old runs' configs), resolvers (the ${...} the YAML calls)."""
