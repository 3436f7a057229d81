"""taming-transformers VQGAN checkpoints -> vistok's AutoencoderTokenizer
(command line: ``tools/model_converters/taming_vqgan.py``).

Key mapping (taming ``taming/modules/diffusionmodules/model.py`` and
``taming/models/vqgan.py``; vistok ``vistok/models/backbones/conv.py``):

* ``encoder.down.{i}.downsample.conv.*`` ->
  ``encoder.down.{i}.resample.conv.*``
* ``decoder.up.{i}.upsample.conv.*`` -> ``decoder.up.{i}.resample.conv.*``
* ``quantize.embedding.weight`` -> ``quantizer.codebook``
* every other ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
  ``post_quant_conv.*`` key keeps its name (and is also copied to the
  model's EMA copy ``ema.*`` when the config has one);
* ``loss.discriminator.*`` (``NLayerDiscriminator``) ->
  ``discriminator.*`` (``PatchGANDiscriminator``, same layer indices) when
  the config has a discriminator;
* ``loss.perceptual_loss.*`` (LPIPS) is dropped: vistok loads LPIPS from its
  own files (``model.perceptual_loss.trunk_path``).

Model keys taming has no counterpart for keep their initial values: the
LeCam statistics ``adversarial_loss.lecam_ema_*`` and ``ema.num_updates``.
Anything else unmapped or missing stops the conversion with a report.
"""
from vistok.utils.convert import with_copies

#: (taming pattern, vistok replacement) of the generator (encoder,
#: quantizer, decoder and the 1x1 convs around the quantizer)
GENERATOR_RULES = [
    (r'encoder\.down\.(\d+)\.downsample\.(.+)',
     r'encoder.down.\1.resample.\2'),
    (r'decoder\.up\.(\d+)\.upsample\.(.+)', r'decoder.up.\1.resample.\2'),
    (r'quantize\.embedding\.weight', 'quantizer.codebook'),
    (r'((?:encoder|decoder|quant_conv|post_quant_conv)\..+)', r'\1'),
]
DISCRIMINATOR_RULE = (r'loss\.discriminator\.(.+)', r'discriminator.\1')
#: taming keys that vistok does not take from the checkpoint
IGNORE_UNMAPPED = (r'loss\.perceptual_loss\..+', )
#: vistok keys without a taming counterpart (they keep their initial values)
ALLOW_MISSING = (r'adversarial_loss\.lecam_ema_(real|fake)',
                 r'ema\.num_updates')


def rules_for(model) -> list:
    """The rules for ``model`` (an AutoencoderTokenizer): generator tensors
    also go to its EMA copy when it keeps one, the discriminator rule only
    when it has a discriminator."""
    rules = list(GENERATOR_RULES)
    if getattr(model, 'ema', None) is not None:
        rules = with_copies(rules, 'ema.')
    if getattr(model, 'discriminator', None) is not None:
        rules.append(DISCRIMINATOR_RULE)
    return rules
