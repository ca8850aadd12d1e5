"""The base of every site-file model: strict types, unknown keys refused, frozen.

Its own module so that sections kept in modules of their own (kubernetes.py) share it
with model.py without importing each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Printable text without line breaks or other control characters.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


class Strict(BaseModel):
    # defer_build: a model's validator is built when it is first used, not when its class
    # is made. A site is validated by Site's validator alone, which holds its sections';
    # building each section's own too cost every command ~10 ms for nothing. No
    # use_attribute_docstrings: the fields' descriptions are read only for the schema and
    # the reference (described.py).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              defer_build=True)
