"""``qtune report``: the fidelity table of one fine-tune, from its base, its run and its exports (``build``),
and its chart (``chart``). It sits above export: it reads what export writes."""
