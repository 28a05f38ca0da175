# Mask R-CNN with a RevBiFPN-S4 backbone on COCO, 1x schedule (12 epochs).
#
# Same backbone/neck choices as faster_rcnn_revbifpn_s4.py (see there): the paper's
# setting of MMDetection's HRNet configs (norm_eval=True, frozen_stages=-1, HRFPN-style
# neck), mmdet's 1x schedule (SGD lr 0.02 / batch 16, momentum 0.9, wd 1e-4).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['revbifpn_mm'], allow_failed_imports=False)

data_root = 'data/coco/'

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),  # RevBiFPN needs multiples of 32
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

train_dataloader = dict(
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/')))
val_dataloader = dict(
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# 1x schedule, spelled out (identical to mmdet's schedule_1x.py).
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))
auto_scale_lr = dict(enable=False, base_batch_size=16)
