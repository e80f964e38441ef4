"""The base of every config section: strict (a typo is an error) and frozen (nothing is changed after
loading)."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
