# Faster R-CNN with a RevBiFPN-S6 backbone on COCO, 1x schedule: faster_rcnn_revbifpn_s4.py
# with only the arch, the neck's in_channels and the ImageNet checkpoint changed
# (drop_path_rate restated, as each arch would default to its ImageNet rate).
_base_ = './faster_rcnn_revbifpn_s4.py'

model = dict(
    backbone=dict(
        arch='s6',
        drop_path_rate=0.0,  # no stochastic depth in fine-tuning (ImageNet: 0.3), as S4
        init_cfg=dict(type='Pretrained', checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s6.pth.tar')),
    neck=dict(in_channels=[320, 416, 848, 2128]))
