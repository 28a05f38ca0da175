# Mask R-CNN with a RevBiFPN-S3 backbone on COCO, 1x schedule: mask_rcnn_revbifpn_s4.py
# with only the arch, the neck's in_channels and the ImageNet checkpoint changed.
_base_ = './mask_rcnn_revbifpn_s4.py'

model = dict(
    backbone=dict(
        arch='s3',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/revbifpn_s3.pth.tar')),
    neck=dict(in_channels=[128, 160, 336, 848]))
