# Mask R-CNN with a RevBiFPN-S5 backbone on COCO, 1x schedule: mask_rcnn_revbifpn_s4.py
# with only the arch, the neck's in_channels and the ImageNet checkpoint changed
# (drop_path_rate restated, as each arch would default to its ImageNet rate).
_base_ = './mask_rcnn_revbifpn_s4.py'

model = dict(
    backbone=dict(
        arch='s5',
        drop_path_rate=0.0,  # no stochastic depth in fine-tuning (ImageNet: 0.1), as S4
        init_cfg=dict(type='Pretrained', checkpoint='https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_s5.pth.tar')),
    neck=dict(in_channels=[256, 336, 672, 1696]))
