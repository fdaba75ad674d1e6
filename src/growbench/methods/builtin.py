"""Imports every built-in method module so their ``@register`` decorators run."""

from growbench.methods import (  # noqa: F401
    baselines,
    fast_s2d,
    firefly,
    gradmax,
    random_add,
    random_split,
    s2d,
    senn,
    signed_s2d,
    tiny,
)
