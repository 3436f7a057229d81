"""TiTok stage 2: vistok's L2, perceptual and adversarial terms for one
batch equal those of TiTok's ``ReconstructionLoss_Stage2`` written out on
[0, 1] images (bytedance/1d-tokenizer ``modeling/modules/losses.py`` and
``modeling/modules/perceptual_loss.py`` at commit
942a96fbdd873780179d1b78d5462911528bf8c8; weights of
``configs/training/TiTok/stage2/titok_l32.yaml``: reconstruction_weight 1.0,
perceptual_weight 0.1, discriminator_weight 0.01, discriminator_factor 1.0,
lecam_regularization_weight 0.001), so L2 : perceptual : GAN is TiTok's
1 : 0.1 : 0.01.

The model is a tiny TiTok with random weights whose loss terms are the
config's (``configs/_base_/losses/titok_pixel.py``), with two small
stand-ins: the discriminator is the config's ``MaskGITDiscriminator`` with
fewer channels, and the perceptual network is torchvision's
``resnet18`` (random weights written by the test) in place of
``convnext_small``, at 40 px instead of 224 -- every other key (library,
ImageNet normalisation, pixel range, weight) as configured.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
import torchvision
from mmengine.config import Config

from _helpers import REPO_ROOT
from vistok.models.tokenizers.titok import TiTokTokenizer

TITOK_PIXEL = osp.join(REPO_ROOT, 'configs/_base_/losses/titok_pixel.py')
MASKGIT_BASE = osp.join(REPO_ROOT,
                        'configs/_base_/models/maskgit_vqgan_conv-f16.py')
IMAGE = 32
#: the perceptual network's input side (224 in the config; small for speed)
PERCEPTUAL_SIZE = 40
#: configs/training/TiTok/stage2/titok_l32.yaml
RECONSTRUCTION_WEIGHT, PERCEPTUAL_WEIGHT = 1.0, 0.1
DISCRIMINATOR_WEIGHT, DISCRIMINATOR_FACTOR = 0.01, 1.0
LECAM_WEIGHT, DISCRIMINATOR_START = 0.001, 20_000
#: LeCam EMAs of the mean logits before the step (both hinge sides active)
EMA_REAL, EMA_FAKE = 2.0, -2.0
#: perceptual_loss.py's _IMAGENET_MEAN / _IMAGENET_STD
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tiny_stage2(tmp_path):
    losses = Config.fromfile(TITOK_PIXEL)
    torch.manual_seed(0)
    net_path = str(tmp_path / 'resnet18.pth')
    torch.save(torchvision.models.resnet18().state_dict(), net_path)
    perceptual = losses.titok_perceptual_loss
    assert perceptual.resize == 224
    perceptual.update(model_name='resnet18', weights_path=net_path,
                      weights_sha256=None, resize=PERCEPTUAL_SIZE)
    discriminator = losses.titok_discriminator
    discriminator.update(base_channels=8, num_groups=4)
    teacher = Config.fromfile(MASKGIT_BASE).model
    conv = dict(ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1,
                resolution=IMAGE, z_channels=8, num_groups=4)
    teacher.encoder.update(conv)
    teacher.decoder.update(conv)
    teacher.quantizer.update(codebook_size=16, embed_dim=8)
    vit = dict(size=None, width=32, depth=1, num_heads=2,
               num_latent_tokens=8, img_size=IMAGE, patch_size=16)
    model = TiTokTokenizer(
        encoder=dict(type='LatentTokenEncoder', out_channels=12, **vit),
        quantizer=dict(type='VectorQuantizer', codebook_size=64,
                       embed_dim=12, use_l2_norm=True),
        decoder=dict(type='LatentTokenDecoder', in_channels=12, **vit),
        head='proxy', num_proxy_codes=16, is_legacy=True,
        pixel_range=(0.0, 1.0), pixel_decoder=teacher,
        frozen_parts=('encoder', 'quantizer'),
        reconstruction_loss=losses.titok_reconstruction_loss,
        perceptual_loss=perceptual, discriminator=discriminator,
        adversarial_loss=losses.titok_adversarial_loss)
    model.perceptual_losses[0].init_weights()  # the network's file
    return model


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (F.relu(1.0 - logits_real).mean() +
                  F.relu(1.0 + logits_fake).mean())


def official_stage2(model, images01, recon01):
    """``ReconstructionLoss_Stage2``'s generator and discriminator terms on
    [0, 1] images (LeCam EMAs :data:`EMA_REAL` / :data:`EMA_FAKE`), with
    vistok's frozen perceptual network and discriminator as the networks."""
    net = model.perceptual_losses[0].model
    disc = model.discriminator

    def convnext_branch(x):  # PerceptualLoss.forward
        x = F.interpolate(x, size=PERCEPTUAL_SIZE, mode='bilinear',
                          align_corners=False, antialias=True)
        return net((x - IMAGENET_MEAN) / IMAGENET_STD)

    l2 = RECONSTRUCTION_WEIGHT * F.mse_loss(images01, recon01)
    perceptual = PERCEPTUAL_WEIGHT * F.mse_loss(convnext_branch(images01),
                                                convnext_branch(recon01))
    gan = DISCRIMINATOR_WEIGHT * DISCRIMINATOR_FACTOR * -disc(recon01).mean()
    logits_real, logits_fake = disc(images01), disc(recon01)
    d_loss = DISCRIMINATOR_FACTOR * hinge_d_loss(logits_real, logits_fake)
    lecam = LECAM_WEIGHT * (F.relu(logits_real.mean() - EMA_FAKE).pow(2) +
                            F.relu(EMA_REAL - logits_fake.mean()).pow(2))
    return dict(l2=l2, perceptual=perceptual, gan=gan, d_loss=d_loss,
                lecam=lecam)


def test_stage2_terms_equal_titoks_on_zero_one_images(tmp_path):
    model = tiny_stage2(tmp_path)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, IMAGE, IMAGE), generator=gen,
                           dtype=torch.uint8)
    inputs = model.data_preprocessor(dict(inputs=list(pixels)),
                                     True)['inputs']
    # the MaskGIT pixel decoder's own output: TiTok's [0, 1] reconstruction
    raw = []
    hook = model.pixel_decoder.conv_out.register_forward_hook(
        lambda module, args, out: raw.append(out.detach()))
    losses, recon = model.generator_losses(inputs, DISCRIMINATOR_START)
    hook.remove()
    model.adversarial_loss.lecam_ema_real.fill_(EMA_REAL)
    model.adversarial_loss.lecam_ema_fake.fill_(EMA_FAKE)
    d_terms = model.adversarial_loss.discriminator_losses(
        model.discriminator, inputs, recon.detach())

    with torch.no_grad():
        ref = official_stage2(model, pixels.float() / 255, raw[0])

    def close(ours, theirs):
        torch.testing.assert_close(ours.detach(), theirs, rtol=2e-5,
                                   atol=0)

    close(losses['loss_mse'], ref['l2'])
    close(losses['loss_perceptual'], ref['perceptual'])
    close(losses['loss_gan'], ref['gan'])
    close(d_terms['loss_disc'], ref['d_loss'])
    close(d_terms['loss_lecam'], ref['lecam'])
    assert ref['l2'] > 0.01 and ref['perceptual'] > 0.01 and ref['lecam'] > 0
    # the weights are TiTok's: fixed GAN weight 0.01, nothing adaptive
    assert losses['gan_weight'].item() == pytest.approx(DISCRIMINATOR_WEIGHT)
    # on vistok's [-1, 1] images the L2 would have been 4x TiTok's
    torch.testing.assert_close(
        F.mse_loss(recon.detach(), inputs), 4 * ref['l2'], rtol=1e-5,
        atol=0)
    # only the trained parts and these terms enter the generator step
    assert sorted(k for k in losses if 'loss' in k) == [
        'loss_gan', 'loss_mse', 'loss_perceptual']
