# Faster R-CNN with a RevBiFPN-S4 backbone on COCO, 1x schedule (12 epochs).
#
# Follows the paper's detection setting, which used MMDetection's HRNet configs with
# the backbone swapped: backbone -> neck (HRFPN, here its lean-memory equivalent
# RevBiFPNNeck) -> RPN / RoI heads of faster-rcnn_r50_fpn.
#
# * norm_eval=True: the backbone's BatchNorms stay in eval mode (ImageNet statistics
#   frozen, affine parameters still trained), as MMDetection's HRNet backbone does by
#   default (its `norm_eval=True`); with 2 images per GPU, batch statistics are too noisy.
# * frozen_stages=-1: nothing frozen, as HRNet (whose default is also -1).
# * Everything else comes from the mmdet base config unchanged: COCO 2017 under
#   data/coco/, images padded to multiples of 32 (pad_size_divisor=32, which RevBiFPN
#   needs), RPN / RoI heads, and the 1x schedule (SGD lr 0.02 for a total batch of
#   16 = 8 GPUs x 2 images, momentum 0.9, weight decay 1e-4, 500-iter linear warm-up,
#   x0.1 at epochs 8 and 11). Use `--auto-scale-lr` with a different total batch size.
# * The ImageNet checkpoint (official `revbifpn_s4.pth.tar`) is expected in
#   checkpoints/; override with
#   --cfg-options model.backbone.init_cfg.checkpoint=PATH (or init_cfg=None: from scratch).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['revbifpn_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RevBiFPN',
        arch='s4',
        out_indices=(0, 1, 2, 3),
        out_type='neck',
        frozen_stages=-1,
        norm_cfg=dict(type='BN', eps=1e-3, requires_grad=True),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/revbifpn_s4.pth.tar')),
    neck=dict(
        _delete_=True,
        type='RevBiFPNNeck',
        in_channels=[192, 256, 512, 1280],
        out_channels=256,
        num_outs=5))

