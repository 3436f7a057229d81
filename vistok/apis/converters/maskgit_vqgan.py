"""The MaskGIT-VQGAN weights released with TiTok -> vistok's
AutoencoderTokenizer (command line:
``tools/model_converters/maskgit_vqgan.py``).

The release, ``maskgit-vqgan-imagenet-f16-256.bin``, is the MaskGIT
tokenizer of Chang et al. 2022 converted from JAX by the TiTok authors: a
plain state dict of TiTok's ``PretrainedTokenizer``.

Key mapping (TiTok ``modeling/modules/maskgit_vqgan.py``; vistok
``vistok/models/backbones/conv.py`` with the MaskGIT options):

* ``{encoder,decoder}.mid.0.*`` / ``.mid.1.*`` -> ``.mid.block_1.*`` /
  ``.mid.block_2.*``
* ``decoder.up.{i}.upsample_conv.*`` -> ``decoder.up.{i}.resample.conv.*``
* ``quantize.embedding.weight`` -> ``quantizer.codebook``
* every other ``encoder.*`` / ``decoder.*`` key keeps its name;
* every tensor is also copied to the EMA copy ``ema.*`` when the config
  keeps one.

The release has no discriminator: ``discriminator.*``, the LeCam statistics
and ``ema.num_updates`` keep their initial values. Anything else unmapped or
missing stops the conversion with a report.
"""
from vistok.utils.convert import TOKENIZER_TRAINING_STATE, rules_with_ema_copy

#: (TiTok pattern, vistok replacement)
RULES = [
    (r'(encoder|decoder)\.mid\.0\.(.+)', r'\1.mid.block_1.\2'),
    (r'(encoder|decoder)\.mid\.1\.(.+)', r'\1.mid.block_2.\2'),
    (r'decoder\.up\.(\d+)\.upsample_conv\.(.+)',
     r'decoder.up.\1.resample.conv.\2'),
    (r'quantize\.embedding\.weight', 'quantizer.codebook'),
    (r'((?:encoder|decoder)\..+)', r'\1'),
]
#: vistok keys without a counterpart in the release
ALLOW_MISSING = TOKENIZER_TRAINING_STATE


def rules_for(model) -> list:
    """:data:`RULES`, also writing to the EMA copy of ``model`` (an
    AutoencoderTokenizer) when it keeps one."""
    return rules_with_ema_copy(RULES, model)
