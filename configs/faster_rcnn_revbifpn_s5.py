# Faster R-CNN with a RevBiFPN-S5 backbone on COCO, 1x schedule: faster_rcnn_revbifpn_s4.py
# with only the arch, the neck's in_channels and the ImageNet checkpoint changed.
_base_ = './faster_rcnn_revbifpn_s4.py'

model = dict(
    backbone=dict(
        arch='s5',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/revbifpn_s5.pth.tar')),
    neck=dict(in_channels=[256, 336, 672, 1696]))
