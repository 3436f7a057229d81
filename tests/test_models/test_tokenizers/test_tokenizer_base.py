"""The tokenizer base's extension points are enough: tokenizers written on
it (TiTok in the core, the example plugin's PatchTokenizer, ImageFolder's)
use none of its private members, and a bad network key is named."""
import inspect
import re

import pytest
import torch

from vistok.models.tokenizers import (
    AutoencoderTokenizer,
    BaseTokenizer,
    TiTokTokenizer,
)


def tiny_autoencoder_cfg(**extra):
    conv = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                resolution=16, z_channels=4, num_groups=4)
    return dict(
        encoder=dict(type='ConvEncoder', in_channels=3, **conv),
        quantizer=dict(type='VectorQuantizer', codebook_size=16,
                       embed_dim=4),
        decoder=dict(type='ConvDecoder', out_ch=3, **conv),
        ema=dict(decay=0.9), **extra)


def tiny_autoencoder(**extra):
    return AutoencoderTokenizer(**tiny_autoencoder_cfg(**extra))


def base_private_names():
    """Every ``_``-prefixed, non-dunder name of the base: class attributes
    (its own and inherited: mmengine / torch internals count too) and the
    instance attributes it sets."""
    def private(name):
        return name.startswith('_') and not (name.startswith('__')
                                             and name.endswith('__'))
    names = {name for name in dir(BaseTokenizer) if private(name)}
    names |= {name for name in vars(tiny_autoencoder()) if private(name)}
    names |= set(re.findall(r'self\.(_[A-Za-z]\w*)',
                            inspect.getsource(BaseTokenizer)))
    return names


def test_base_private_names_are_found():
    """The collector sees the base's own private members (so the test below
    can fail)."""
    names = base_private_names()
    assert {'_update', '_accumulate_code_counts', '_code_counts',
            '_loss_keys'} <= names


@pytest.mark.parametrize(
    'tokenizer', ['TiTokTokenizer', 'PatchTokenizer', 'ImageFolderTokenizer'])
def test_tokenizers_use_only_public_seams(tokenizer):
    if tokenizer == 'PatchTokenizer':
        from projects.example_project.example_project import PatchTokenizer
        cls = PatchTokenizer
    elif tokenizer == 'ImageFolderTokenizer':
        from projects.ImageFolder.imagefolder import ImageFolderTokenizer
        cls = ImageFolderTokenizer
    else:
        cls = TiTokTokenizer
    assert issubclass(cls, BaseTokenizer)
    source = inspect.getsource(inspect.getmodule(cls))
    used = sorted(name for name in base_private_names()
                  if re.search(rf'(?<!\w){re.escape(name)}(?!\w)', source))
    assert not used, (f'{cls.__name__} uses private members of '
                      f'BaseTokenizer: {used}; add a public seam instead')


def test_network_keys_are_checked_with_a_clear_error():
    with pytest.raises(TypeError, match='build_network'):
        tiny_autoencoder(use_quant_cnv=False)


def test_legacy_image_preprocessor_config_maps_to_pixels():
    """Configs written before ImagePreprocessor (mmengine's
    ImgDataPreprocessor) give the same model with ``to_pixels``."""
    model = tiny_autoencoder(data_preprocessor=dict(
        type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3))
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(
        1, 3, 2, 2)
    assert torch.equal(model.to_pixels(x)[0, 0].flatten(),
                       torch.tensor([0.0, 127.5, 255.0, 255.0]))


def test_extra_loss_terms_join_the_generator_step():
    """A subclass's extra term is logged, summed into the total and
    back-propagated; a name clash with the recipe's terms is an error."""
    class WithExtra(AutoencoderTokenizer):
        name = 'loss_extra'

        def extra_loss_terms(self, inputs, out, iteration):
            return [{self.name: 3.0 * out.latent.pow(2).mean()}]

    model = WithExtra(**tiny_autoencoder_cfg())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    losses = model.loss(images)
    latent = model.reconstruct(images).latent
    assert torch.allclose(losses['loss_extra'], 3.0 * latent.pow(2).mean())
    losses['loss_extra'].backward()
    assert model.encoder.conv_in.weight.grad is not None
    model.name = 'loss_l1'
    with pytest.raises(ValueError, match='duplicate log names'):
        model.loss(images)
