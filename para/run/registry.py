"""The methods the harness can train. One name per method everywhere: this key = `conf/method/<name>.yaml` =
run-folder segment = W&B group = the `method` column of tables."""

from __future__ import annotations

from baselines.dreambooth import DreamBooth
from baselines.lora import Lora, LoraAttn
from baselines.lycoris import Loha, Lokr, Oft
from baselines.para_authors import ParaAuthors
from baselines.svdiff import SVDiff
from para.adapter import PaRa
from para.core.method import Method

METHODS: dict[str, type[Method]] = {
    "para": PaRa,
    "lora": Lora,
    "lora_attn": LoraAttn,
    "dreambooth": DreamBooth,
    "svdiff": SVDiff,
    "loha": Loha,
    "lokr": Lokr,
    "oft": Oft,
    "para_authors": ParaAuthors,
}
