# ImageFolder MSVR10P2-4096 (README: rFID 0.80; the tokenizer of gFID 2.60 with
# VAR-d17): the recipe of _base_/imagefolder_tokenizer.py. This is also row 8
# of the ablation (configs/ablation/).
_base_ = ['./_base_/imagefolder_tokenizer.py']
