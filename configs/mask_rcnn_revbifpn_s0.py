# Mask R-CNN with a RevBiFPN-S0 backbone on COCO, 1x schedule: mask_rcnn_revbifpn_s4.py
# with only the arch, the neck's in_channels and the ImageNet checkpoint changed.
_base_ = './mask_rcnn_revbifpn_s4.py'

model = dict(
    backbone=dict(
        arch='s0',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/revbifpn_s0.pth.tar')),
    neck=dict(in_channels=[48, 64, 128, 320]))
