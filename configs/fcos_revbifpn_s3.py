# FCOS with a RevBiFPN-S3 backbone on COCO, 1x schedule: mmdet's HRNet FCOS config
# (fcos_hrnetv2p-w32-gn-head_4xb4-1x_coco: GN head, 4 GPUs x 4 images, HRFPN with stride=2 for the
# head's point strides 8-128) with the backbone swapped and RevBiFPNNeck, which computes HRFPN's
# outputs (faster_rcnn_revbifpn_s4.py explains the backbone settings). Images are normalised as the
# ImageNet weights were trained: RGB, ImageNet mean and std (the base normalises BGR).
_base_ = 'mmdet::hrnet/fcos_hrnetv2p-w32-gn-head_4xb4-1x_coco.py'

custom_imports = dict(imports=['revbifpn_mm'], allow_failed_imports=False)

model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='RevBiFPN',
        arch='s3',
        out_indices=(0, 1, 2, 3),
        out_type='neck',
        frozen_stages=-1,
        norm_cfg=dict(type='BN', eps=1e-3, requires_grad=True),
        norm_eval=True,
        drop_path_rate=0.0,  # no stochastic depth in fine-tuning (ImageNet: 0.05)
        init_cfg=dict(type='Pretrained', checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s3.pth.tar')),
    neck=dict(
        _delete_=True,
        type='RevBiFPNNeck',
        in_channels=[128, 160, 336, 848],
        out_channels=256,
        stride=2,  # strides 8, 16, 32, 64, 128: the point strides of the FCOS head
        num_outs=5))

# Checkpoints are written to a temporary name and renamed into place, and old ones are removed only
# after that (revbifpn_mm.mm.hooks.SafeCheckpointHook): a save cut short never loses the last good one.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
