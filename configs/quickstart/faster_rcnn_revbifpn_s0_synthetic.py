# Quickstart: Faster R-CNN + RevBiFPN-S0 on the embedded synthetic shapes dataset.
#
# CPU-friendly: 256x256 images, random initialisation (no checkpoint needed), fewer
# RPN proposals and RoIs, a narrower neck/head, and a short iteration-based AdamW
# schedule that learns the three classes (circle/square/triangle) in a few minutes
# on 2 CPU cores. The dataset is written by `python tools/synthetic_data.py`
# (tools/train.py, tools/test.py and tools/quickstart.py generate it when absent).
_base_ = '../faster_rcnn_revbifpn_s0.py'

data_root = 'data/synthetic_coco/'
metainfo = dict(classes=('circle', 'square', 'triangle'),
                palette=[(220, 50, 50), (50, 190, 70), (50, 90, 225)])
image_size = (256, 256)
neck_channels = 128
max_iters = 120
val_interval = max_iters
lr = 2e-3  # AdamW; 4e-3 diverges, 1e-3 learns more slowly

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        arch='s0',
        # Random init with batch statistics: keep BatchNorm in train mode.
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[48, 64, 128, 320], out_channels=neck_channels, num_outs=5),
    rpn_head=dict(in_channels=neck_channels, feat_channels=neck_channels),
    roi_head=dict(
        # 2x2 samples per RoIAlign bin: mmcv's CPU RoIAlign backward is slow with adaptive sampling
        bbox_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=neck_channels),
        bbox_head=dict(in_channels=neck_channels, fc_out_channels=256, num_classes=3)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),  # a no-op for the 256x256 images
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric='bbox',
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=val_interval)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=25),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=25, end=max_iters, eta_min=lr * 0.05),
]
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=val_interval, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=20)
