"""The data room: where rows come from (files or the synthetic generator), how they are read, split and encoded,
and the on-disk encoded dataset every trial maps. Mapping a dataset needs no torch: tensors come with training."""
