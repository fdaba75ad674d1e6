"""Imports every built-in method module so their ``@register`` decorators run."""

from growbench.methods import baselines, random_add, random_split, s2d  # noqa: F401
