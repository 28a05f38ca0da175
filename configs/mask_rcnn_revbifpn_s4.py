# Mask R-CNN with a RevBiFPN-S4 backbone on COCO, 1x schedule (12 epochs).
#
# Same backbone/neck choices as faster_rcnn_revbifpn_s4.py (see there): the paper's
# setting of MMDetection's HRNet configs (norm_eval=True, frozen_stages=-1, HRFPN-style
# neck), no stochastic depth (drop_path_rate=0.0), the official ImageNet checkpoint by
# URL (downloaded once, SHA-256 checked); everything else, including data/coco/, pad_size_divisor=32 and the 1x schedule
# (SGD lr 0.02 / batch 16, momentum 0.9, wd 1e-4), comes from the mmdet base unchanged.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

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
