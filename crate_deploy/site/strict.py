"""The base of every site-file model: strict types, unknown keys refused, frozen.

Its own module so that sections kept in modules of their own (kubernetes.py) share it
with model.py without importing each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Printable text without line breaks or other control characters.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)
