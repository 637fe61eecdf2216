"""The papers' numbers, keyed by the name of our config that reproduces them
(ConvNeXt's Tables 1, 3, 4; ConvNeXt V2's Tables 6, 7).

Each entry: params (M), FLOPs (G) at the paper's input size, and for COCO the
FPS on one A100 (Table 3), box AP and mask AP; for ADE20K single- and
multi-scale mIoU (Table 4); for ImageNet top-1 (Table 1).
"""

COCO = {  # Table 3: FLOPs at 1280x800
    'mask_rcnn_convnext_t_coco':
    dict(params=48, flops=262, fps=25.6, box_ap=46.2, mask_ap=41.7),
    'cascade_convnext_t_coco':
    dict(params=86, flops=741, fps=13.5, box_ap=50.4, mask_ap=43.7),
    'cascade_convnext_s_coco':
    dict(params=108, flops=827, fps=12.0, box_ap=51.9, mask_ap=45.0),
    'cascade_convnext_b_coco':
    dict(params=146, flops=964, fps=11.4, box_ap=52.7, mask_ap=45.6),
    'cascade_convnext_b_in22k_coco':
    dict(params=146, flops=964, fps=11.5, box_ap=54.0, mask_ap=46.9),
    'cascade_convnext_l_in22k_coco':
    dict(params=255, flops=1354, fps=10.0, box_ap=54.8, mask_ap=47.6),
    'cascade_convnext_xl_in22k_coco':
    dict(params=407, flops=1898, fps=8.6, box_ap=55.2, mask_ap=47.7),
}

ADE20K = {  # Table 4: FLOPs at 2048x512 (512 crops) or 2560x640 (640 crops)
    'upernet_convnext_t_ade20k':
    dict(params=60, flops=939, miou_ss=46.0, miou_ms=46.7),
    'upernet_convnext_s_ade20k':
    dict(params=82, flops=1027, miou_ss=48.7, miou_ms=49.6),
    'upernet_convnext_b_ade20k':
    dict(params=122, flops=1170, miou_ss=49.1, miou_ms=49.9),
    'upernet_convnext_b_in22k_ade20k_640':
    dict(params=122, flops=1828, miou_ss=52.6, miou_ms=53.1),
    'upernet_convnext_l_in22k_ade20k_640':
    dict(params=235, flops=2458, miou_ss=53.2, miou_ms=53.7),
    'upernet_convnext_xl_in22k_ade20k_640':
    dict(params=391, flops=3335, miou_ss=53.6, miou_ms=54.0),
}

IMAGENET = {  # Table 1, by arch and input size
    ('tiny', 224): dict(params=28, flops=4.5, top1=82.1),
    ('small', 224): dict(params=50, flops=8.7, top1=83.1),
    ('base', 224): dict(params=89, flops=15.4, top1=83.8),
    ('large', 224): dict(params=198, flops=34.4, top1=84.3),
    ('xlarge', 224): dict(params=350, flops=60.9, top1=None),
    ('base', 384): dict(params=89, flops=45.0, top1=85.1),
    ('large', 384): dict(params=198, flops=101.0, top1=85.5),
}


# ConvNeXt V2 (Woo et al., CVPR 2023), the FCMAE rows of its dense tasks
COCO_V2 = {  # Table 6, Mask R-CNN: FLOPs at 1280x800; no params reported
    'mask_rcnn_convnextv2_b_fcmae_coco':
    dict(params=None, flops=486, box_ap=52.9, mask_ap=46.6),
    'mask_rcnn_convnextv2_l_fcmae_coco':
    dict(params=None, flops=875, box_ap=54.4, mask_ap=47.7),
    'mask_rcnn_convnextv2_h_fcmae_coco':
    dict(params=None, flops=2525, box_ap=55.7, mask_ap=48.9),
}

ADE20K_V2 = {  # Table 7, UperNet: FLOPs at 2048x512 or 2560x640
    'upernet_convnextv2_b_ade20k': dict(params=122, flops=1170, miou=52.1),
    'upernet_convnextv2_l_ade20k': dict(params=235, flops=1573, miou=53.7),
    'upernet_convnextv2_h_ade20k': dict(params=707, flops=3272, miou=55.0),
    'upernet_convnextv2_h_in22k_ade20k_640':
    dict(params=707, flops=5113, miou=57.0),
}


def paper_entry(config_name: str):
    """The paper's row for one of our COCO / ADE20K configs (V1 or V2), or
    None."""
    for table in (COCO, ADE20K, COCO_V2, ADE20K_V2):
        if config_name in table:
            return table[config_name]
    return None
