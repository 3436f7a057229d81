"""ImageFolder's tokenizer (Li et al. 2025, "ImageFolder: Autoregressive
Image Generation with Folded Tokens", ICLR 2025; lxa9867/ImageFolder,
``tokenizer/tokenizer_image/xqgan_model.py``): a DINOv2 latent-grid encoder,
a product of multi-scale residual quantizers (two "folded" branches), a
DINOv2 pixel decoder and semantic regularisation of one branch.

Everything but the semantic term is vistok's: the network is
:class:`~vistok.models.tokenizers.AutoencoderTokenizer`'s without its 1×1
convs (the encoder and decoder project to and from the code space
themselves), the recipe is :class:`~vistok.models.tokenizers.base.
BaseTokenizer`'s, and this class adds the term through the public
``extra_loss_terms`` extension point.
"""
from typing import List, Optional

import torch

from vistok.models.tokenizers import AutoencoderTokenizer
from vistok.models.tokenizers.base import LossDict, PartCfg
from vistok.registry import LOSSES, MODELS
from vistok.structures import TokenizerOutput


@MODELS.register_module()
class ImageFolderTokenizer(AutoencoderTokenizer):
    """``images (B, 3, H, W)`` in [-1, 1] → ``encoder`` (e.g.
    :class:`~vistok.models.backbones.DINOv2LatentEncoder`, ``(B, P·C, K,
    K)``) → ``quantizer`` (a ``ProductQuantizer`` of ``P``
    ``MultiScaleResidualQuantizer`` branches) → ``decoder``
    (:class:`~vistok.models.backbones.DINOv2PixelDecoder`) → images. Tokens
    are the per-scale maps ``[(B, s, s, P)]``, the layout ``VARGenerator``
    reads.

    Network args (:meth:`build_network`):
        encoder, quantizer, decoder: BACKBONES / QUANTIZERS / BACKBONES
            configs or modules; ``encoder.out_channels ==
            quantizer.in_channels == decoder.in_channels`` (no 1×1 convs).
        semantic_loss: a ``SemanticRegularizationLoss`` config (LOSSES) or
            ``None``; its ``projector='shared_quant_conv'`` uses the
            encoder's code projection ``encoder.quant_proj`` (official).
            Its trainable projector trains with the generator; it is not
            part of the EMA copy (inference never uses it).

    The adaptive GAN weight is taken at the decoder's last layer
    (``decoder.head.proj.weight``, the linear to-pixel map) unless
    ``last_layer`` says otherwise.
    """

    NON_EMA_PARTS = ('semantic_loss', )

    def build_network(self,
                      encoder: PartCfg,
                      quantizer: PartCfg,
                      decoder: PartCfg,
                      semantic_loss: Optional[PartCfg] = None) -> None:
        super().build_network(encoder, quantizer, decoder,
                              use_quant_conv=False, use_post_quant_conv=False)
        self.semantic_loss = LOSSES.build_or_take(semantic_loss)

    def default_last_layer(self) -> str:
        """The decoder's last layer (its to-pixel linear map)."""
        name = getattr(self.decoder, 'last_layer_name', None)
        return (f'decoder.{name}' if name is not None else
                super().default_last_layer())

    @property
    def num_scales(self) -> Optional[int]:
        """Scales of the quantizer's branches (``None`` for single-scale
        ones)."""
        branches = getattr(self.quantizer, 'branches', [self.quantizer])
        scales = getattr(branches[0], 'scales', None)
        return None if scales is None else len(scales)

    def project_teacher(self, features: torch.Tensor) -> torch.Tensor:
        """The official semantic target projection: the teacher's class
        token ``(B, D, 1, 1)`` through the encoder's code projection
        ``encoder.quant_proj`` (``projector='shared_quant_conv'``)."""
        return self.encoder.quant_proj(features.flatten(1))

    def extra_loss_terms(self, inputs: torch.Tensor, out: TokenizerOutput,
                         iteration: int) -> List[LossDict]:
        """The semantic term (``semantic_loss.loss_name``) on the
        quantizer's output; samples a quantizer-dropout draw cut short
        (``stats['num_scales']``) are left out."""
        if self.semantic_loss is None:
            return []
        loss = self.semantic_loss
        project = (self.project_teacher
                   if loss.projector_type == 'shared_quant_conv' else None)
        value = loss(inputs, out.quantizer.quantized,
                     num_scales=out.quantizer.stats.get('num_scales'),
                     total_scales=self.num_scales, project=project,
                     iteration=iteration)
        return [{loss.loss_name: value}]


__all__ = ['ImageFolderTokenizer']
