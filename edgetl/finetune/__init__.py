"""`edgetl finetune`: transfer a pretrained backbone to a new set of classes, in one process or under torchrun.

settings.py   what it takes (FinetuneSettings) and the checks between settings
result.py     what it gives (FinetuneResult = RUN/metrics.json)
run.py        finetune(run, cfg, events): the run directory, training, scoring, the from-scratch twin
loop.py       the epochs: optimizer steps, validation, best weights and checkpoint
runstate.py   what a run keeps on disk while it trains (folder, checkpoint, log)
distributed.py  several processes under torchrun (DistributedDataParallel)
"""

from edgetl.finetune.loop import make_card, resolve_device, save_weights, seed_everything, train_one_epoch
from edgetl.finetune.result import FinetuneResult
from edgetl.finetune.settings import FinetuneSettings, check_plan
from edgetl.finetune.run import finetune

__all__ = ["FinetuneResult", "FinetuneSettings", "check_plan", "finetune", "make_card", "resolve_device",
           "save_weights", "seed_everything", "train_one_epoch"]
