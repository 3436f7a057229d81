"""Affinity-based neuron segmentation (Turaga et al. 2010; Lee et al. 2017,
"Superhuman accuracy on the SNEMI3D connectomics challenge"): a 3-D network
predicts nearest-neighbour affinities, a post-processor turns them into a
segmentation. The TokenUnify fine-tuning / evaluation recipe."""
import copy
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel

from vistok.registry import BACKBONES, LOSSES, MODELS, POSTPROCESSORS
from vistok.structures import DataSample
from vistok.utils.partial_load import load_pretrained
from .sliding_window import sliding_window_inference

#: sliding-window settings of the official evaluation (MONAI's
#: ``sliding_window_inference(..., overlap=0.25, mode="gaussian")`` with its
#: default ``sigma_scale`` and zero padding, ``src/inference_monai.py``)
#: except the window, which is the training crop (16×160×160 for EMmamba)
#: and set by configs; keyword arguments of
#: :func:`~.sliding_window.sliding_window_inference`
DEFAULT_INFERENCE = dict(
    window=None,
    overlap=0.25,
    batch_size=1,
    weighting='gaussian',
    sigma_scale=0.125,
    pad_mode='constant',
    pad_value=0.0)
NUM_AFFINITIES = 3


@MODELS.register_module()
class AffinitySegmentor(BaseModel):
    """Predicts z/y/x nearest-neighbour affinities of an EM volume.

    ``inputs`` ``(B, 1, D, H, W)`` in [0, 1] → ``backbone`` (logits
    ``(B, 3, D, H, W)``) → sigmoid → affinities. Channel ``d`` at voxel
    ``p`` is the affinity between ``p`` and ``p - e_d`` (offsets
    ``(-1, 0, 0)``, ``(0, -1, 0)``, ``(0, 0, -1)``), the convention of the
    data pipeline's ``gt_affinity`` and of the post-processors.

    * ``loss``: ``affinity_loss(affinities, gt_affinity, affinity_mask)``
      with the DataSamples' ``gt_affinity`` / ``affinity_mask`` (float
      ``(3, D, H, W)``; a missing mask means all valid). Default
      :class:`~vistok.models.losses.class_balanced_mse.ClassBalancedMSELoss`.
    * ``predict``: each input (a whole test volume ``(1, D, H, W)``, or a
      crop) is predicted by :func:`~.sliding_window.sliding_window_inference`
      (``inference`` settings; ``window=None`` predicts the input in one
      pass), then the ``postprocessor`` (POSTPROCESSORS, e.g.
      ``WatershedAgglomeration`` or ``Multicut``) segments it. Each
      DataSample gets ``pred_affinity`` (float32 ``(3, D, H, W)``, CPU) and,
      with a post-processor, ``pred_label`` (int64 ``(D, H, W)``, CPU) —
      what the ``VOI`` / ``AdaptedRandError`` metrics read next to
      ``gt_label``.
    * ``tensor``: the affinities ``(B, 3, D, H, W)``.

    Args:
        backbone: BACKBONES config (or module) mapping ``(B, 1, D, H, W)``
            to ``(B, 3, D, H, W)`` logits (e.g. ``EMMamba`` with
            ``out_channels=3``).
        affinity_loss: LOSSES config (or module) called as ``loss(pred,
            target, mask)``; logged under its ``loss_name``.
        postprocessor: POSTPROCESSORS config (or object); ``None`` leaves
            ``pred_label`` out.
        inference: overrides of :data:`DEFAULT_INFERENCE` (keyword
            arguments of ``sliding_window_inference``).
        pretrained: keyword arguments of
            :func:`vistok.utils.partial_load.load_pretrained` (``checkpoint``
            path, ``prefix_map``, ``allow_missing`` / ``allow_unexpected`` /
            ``allow_shape_mismatch`` regexes), applied in ``init_weights``
            after the random initialisation: e.g. a pre-trained backbone whose
            ``final_conv`` predicted 1 channel is loaded with
            ``allow_shape_mismatch=[r'backbone\\.final_conv\\..*']``; anything
            else that does not fit is an error, never a silent skip.
        data_preprocessor: MODELS config (vistok scope) or module; default
            :class:`~vistok.models.data_preprocessors.volume.
            VolumeDataPreprocessor`.
        init_cfg: mmengine weight-initialisation config.
    """

    def __init__(self,
                 backbone: Union[dict, nn.Module],
                 affinity_loss: Optional[Union[dict, nn.Module]] = None,
                 postprocessor: Optional[Union[dict, object]] = None,
                 inference: Optional[dict] = None,
                 pretrained: Optional[dict] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(
            data_preprocessor=MODELS.build_or_take(
                data_preprocessor, dict(type='VolumeDataPreprocessor')),
            init_cfg=init_cfg)
        self.backbone = BACKBONES.build_or_take(backbone)
        out_channels = getattr(self.backbone, 'out_channels', NUM_AFFINITIES)
        if out_channels != NUM_AFFINITIES:
            raise ValueError(f'model.backbone must predict {NUM_AFFINITIES} '
                             f'affinity channels (out_channels='
                             f'{NUM_AFFINITIES}), got {out_channels}')
        self.affinity_loss = LOSSES.build_or_take(
            affinity_loss, dict(type='ClassBalancedMSELoss'))
        self.postprocessor = POSTPROCESSORS.build_or_take(postprocessor)
        unknown = set(inference or {}) - set(DEFAULT_INFERENCE)
        if unknown:
            raise ValueError(f'model.inference has unknown keys '
                             f'{sorted(unknown)}; allowed: '
                             f'{sorted(DEFAULT_INFERENCE)}')
        self.inference = copy.deepcopy(DEFAULT_INFERENCE)
        self.inference.update(inference or {})
        self.pretrained = copy.deepcopy(pretrained)

    def init_weights(self) -> None:
        """Random initialisation, then the ``pretrained`` weights."""
        super().init_weights()
        if self.pretrained:
            load_pretrained(self, key='model.pretrained.checkpoint',
                            **self.pretrained)

    def affinities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Affinities ``(B, 3, D, H, W)`` in (0, 1) of ``inputs``
        ``(B, 1, D, H, W)``; the sigmoid runs in fp32."""
        logits = self.backbone(inputs)
        if logits.ndim != inputs.ndim or logits.shape[1] != NUM_AFFINITIES:
            raise ValueError(f'the backbone must return (B, {NUM_AFFINITIES}'
                             f', *spatial) logits for inputs '
                             f'{tuple(inputs.shape)}, got '
                             f'{tuple(logits.shape)}')
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return torch.sigmoid(logits.float())

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor'):
        """Runner entry point; see the class docstring for the modes."""
        if mode == 'tensor':
            return self.affinities(inputs)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f'mode must be "tensor", "loss" or "predict", '
                         f'got {mode!r}')

    @staticmethod
    def _stack_field(data_samples: Sequence[DataSample], key: str,
                     like: torch.Tensor) -> Optional[torch.Tensor]:
        present = [key in sample for sample in data_samples]
        if not any(present):
            return None
        if not all(present):
            raise ValueError(f'"{key}" is set in some data samples of the '
                             f'batch but not in others')
        return torch.stack([
            torch.as_tensor(sample.get(key)) for sample in data_samples
        ]).to(device=like.device, dtype=torch.float32)

    def loss(self, inputs: torch.Tensor,
             data_samples: Sequence[DataSample]) -> Dict[str, torch.Tensor]:
        """``{loss_name: affinity loss}`` of a training batch."""
        if not data_samples:
            raise ValueError('AffinitySegmentor.loss needs data samples with '
                             '"gt_affinity"')
        target = self._stack_field(data_samples, 'gt_affinity', inputs)
        if target is None:
            raise KeyError('every training data sample needs "gt_affinity" '
                           '(float (3, D, H, W))')
        mask = self._stack_field(data_samples, 'affinity_mask', inputs)
        pred = self.affinities(inputs)
        if pred.shape != target.shape:
            raise ValueError(f'predicted affinities {tuple(pred.shape)} and '
                             f'gt_affinity {tuple(target.shape)} differ in '
                             f'shape')
        return {
            self.affinity_loss.loss_name: self.affinity_loss(
                pred, target, mask)
        }

    def predict_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """Affinities ``(3, D, H, W)`` of one volume ``(1, D, H, W)`` by
        sliding-window inference (one pass when ``inference.window`` is
        None)."""
        settings = dict(self.inference)
        window = settings.pop('window')
        if window is None:
            return self.affinities(volume[None])[0]
        return sliding_window_inference(volume, self.affinities, window,
                                        **settings)

    @torch.no_grad()
    def predict(
            self,
            inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
            data_samples: Optional[List[DataSample]] = None
    ) -> List[DataSample]:
        """One DataSample per input volume with ``pred_affinity`` and (with a
        post-processor) ``pred_label``; incoming ``data_samples`` are filled
        in place so their ground truth and metainfo stay."""
        if data_samples is None:
            data_samples = [DataSample() for _ in range(len(inputs))]
        if len(data_samples) != len(inputs):
            raise ValueError(f'{len(inputs)} inputs but {len(data_samples)} '
                             f'data samples')
        for volume, sample in zip(inputs, data_samples):
            affinities = self.predict_volume(volume).cpu()
            sample.set_data(dict(pred_affinity=affinities))
            if self.postprocessor is not None:
                segmentation = self.postprocessor(affinities.numpy())
                sample.set_data(
                    dict(pred_label=torch.from_numpy(
                        segmentation.astype('int64'))))
        return data_samples
