"""prepare_tokenizer / encode_images (models/utils/tokenizer_loading.py),
the one path by which apis.load_tokenizer, LinearProbe and
TokenEmbeddingPreprocessor build and fill a tokenizer: a frozen tokenizer
takes the checkpoint's tensors (extra entries ignored) and can be filled
again, an unfrozen one is filled strictly, bad configs are named."""
import pytest
import torch

from vistok.models.utils import encode_images, is_frozen, prepare_tokenizer
from vistok.registry import MODELS
from vistok.utils.checkpoint import CheckpointLoadError
from vistok.utils.weights import MissingWeightsError

CONV = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
            resolution=16, z_channels=4, num_groups=4)
CFG = dict(type='AutoencoderTokenizer',
           encoder=dict(type='ConvEncoder', in_channels=3, **CONV),
           quantizer=dict(type='VectorQuantizer', codebook_size=16,
                          embed_dim=4),
           decoder=dict(type='ConvDecoder', out_ch=3, **CONV))


def saved(tmp_path, seed, extra=False):
    """A tokenizer built with ``seed`` and its training checkpoint (with a
    tensor it does not have when ``extra``)."""
    torch.manual_seed(seed)
    model = MODELS.build(CFG).eval()
    state = dict(model.state_dict())
    if extra:
        state['discriminator.weight'] = torch.ones(2)
    path = str(tmp_path / f'tokenizer_{seed}.pth')
    torch.save(dict(state_dict=state), path)
    return model, path


def test_frozen_tokenizer_is_filled_and_can_be_filled_again(tmp_path):
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    first, first_path = saved(tmp_path, 1, extra=True)
    second, second_path = saved(tmp_path, 2)
    torch.manual_seed(0)
    tokenizer = prepare_tokenizer(CFG, first_path, freeze=True,
                                  checkpoint_key='model.x.checkpoint')
    assert is_frozen(tokenizer) and not list(tokenizer.parameters())
    assert tokenizer.state_dict() == {} and not tokenizer.training
    expected = encode_images(first, images)
    assert torch.equal(encode_images(tokenizer, images), expected)
    # filling it again (as LinearProbe.init_inference_weights does) takes
    # the new file's tensors: freezing twice would make them all "derived"
    prepare_tokenizer(tokenizer, second_path, freeze=True)
    assert torch.equal(encode_images(tokenizer, images),
                       encode_images(second, images))
    assert not torch.equal(encode_images(second, images), expected)
    with pytest.raises(MissingWeightsError, match='`model.x.checkpoint`'):
        prepare_tokenizer(CFG, None, freeze=True,
                          checkpoint_key='model.x.checkpoint')


def test_unfrozen_is_strict_and_bad_configs_are_named(tmp_path):
    _, path = saved(tmp_path, 1, extra=True)
    with pytest.raises(CheckpointLoadError,
                       match='tokenizer_1.pth does not fit'):
        prepare_tokenizer(CFG, path)
    model = prepare_tokenizer(CFG, None)  # no checkpoint: as built
    assert len(list(model.parameters())) > 0
    with pytest.raises(FileNotFoundError, match='`model.y.config`'):
        prepare_tokenizer(str(tmp_path / 'none.py'),
                          config_key='model.y.config')
    with pytest.raises(TypeError, match='model.y.config must build a '
                       'tokenizer'):
        prepare_tokenizer(dict(type='TokenEmbeddingPreprocessor',
                               codebook=[[1.0]], crop_size=1),
                          config_key='model.y.config')
    with pytest.raises(ValueError, match='cfg_options'):
        prepare_tokenizer(CFG, cfg_options={'model.x': 1})
