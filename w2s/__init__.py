"""w2s: weak-to-strong alignment with an offline logit cache."""

from w2s.errors import quiet_deepspeed

quiet_deepspeed()  # before any stage imports DeepSpeed, which otherwise prints a banner guessing the CPU
