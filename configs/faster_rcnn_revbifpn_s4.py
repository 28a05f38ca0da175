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
# * drop_path_rate=0.0: no stochastic depth in fine-tuning, rather than the ImageNet
#   rate each arch defaults to (S3 0.05, S4/S5 0.1, S6 0.3). The paper fine-tuned with
#   MMDetection's HRNetV2p configs with the backbone swapped, which have none; the 1x
#   schedule is short and the BatchNorms are frozen. To try it, as mmdet's Swin/ConvNeXt
#   configs do: --cfg-options model.backbone.drop_path_rate=0.1
# * init_cfg: the official ImageNet checkpoint by URL (docs/model_zoo.md). The first run
#   downloads it into the torch hub cache ($TORCH_HOME/hub/checkpoints, by default
#   ~/.cache/torch/hub/checkpoints); every run checks its published SHA-256. Offline,
#   put the file there, or use --cfg-options model.backbone.init_cfg.checkpoint=PATH
#   (init_cfg=None: from scratch).
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
        drop_path_rate=0.0,  # no stochastic depth in fine-tuning (ImageNet: 0.1), see above
        init_cfg=dict(type='Pretrained', checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s4.pth.tar')),
    neck=dict(
        _delete_=True,
        type='RevBiFPNNeck',
        in_channels=[192, 256, 512, 1280],
        out_channels=256,
        num_outs=5))

# Checkpoints are written to a temporary name and renamed into place, and old ones are removed only
# after that (revbifpn_mm.mm.hooks.SafeCheckpointHook): a save cut short never loses the last good one.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
