# RetinaNet with a RevBiFPN-S3 backbone on COCO, 1x schedule: mmdet's retinanet_r50_fpn_1x_coco with
# the backbone swapped, as the two-stage configs (faster_rcnn_revbifpn_s4.py explains the backbone
# settings). One-stage heads predict on strides 8-128, where ResNet's FPN starts at C3 and adds P6/P7;
# RevBiFPNNeck gets there with stride=2 on its output convs (as mmdet's HRNet FCOS configs use HRFPN),
# which tests/mm/test_configs.py checks against the head's anchor strides.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['revbifpn_mm'], allow_failed_imports=False)

model = dict(
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
        stride=2,  # strides 8, 16, 32, 64, 128: the anchor strides of the RetinaNet head
        num_outs=5))

# Checkpoints are written to a temporary name and renamed into place, and old ones are removed only
# after that (revbifpn_mm.mm.hooks.SafeCheckpointHook): a save cut short never loses the last good one.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
