"""The lung segmenter: train an smp U-Net on manifests with masks, fill the empty mask cells of others."""

from isnet.segment.config import PostprocessConfig, SegmenterConfig, load_segmenter_config
from isnet.segment.postprocess import clean_mask, dice_iou, mask_quality
from isnet.segment.predict import fill_masks, load_segmenter, predict_mask
from isnet.segment.train import SegFitResult, train_segmenter

__all__ = ["SegmenterConfig", "PostprocessConfig", "load_segmenter_config", "train_segmenter", "SegFitResult",
           "fill_masks", "load_segmenter", "predict_mask", "clean_mask", "mask_quality", "dice_iou"]
