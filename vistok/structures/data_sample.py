from mmengine.structures import BaseDataElement


class DataSample(BaseDataElement):
    """Per-sample annotations and predictions passed between pipeline, model
    and metrics.

    Conventional fields (all optional):

    * ``gt_label`` -- ``torch.long`` scalar class label;
    * ``pred_score`` / ``pred_label`` -- ``(num_classes,)`` class
      probabilities and their argmax (a classifier's prediction, read by
      the ``Accuracy`` metric);
    * ``gt_img`` / ``pred_img`` -- ``(C, *spatial)`` float images in
      ``[0, 255]`` (ground truth and reconstruction);
    * ``tokens`` -- integer token indices of the sample;
    * metainfo: ``sample_idx``, ``img_path``, ``ori_shape``, ``img_shape``,
      ``codebook_size``.
    """
