"""The site file: load (YAML with line marks), model (pydantic), checks, validate, reference."""
