#!/bin/bash
# session 17 probe queue: distilled student only, 40 epochs, held-out training images
cd /work/main
P=".venv/bin/python /tmp/s17/probe.py"
$P --name base-2+6 --seeds 0
$P --name v2m8 --param teacher_mixup_views=8
$P --name blend64-192 --blend 64,192
$P --name lr0.07 --param student_learning_rate=0.07
$P --name wd2.5e-4 --distill weight_decay=0.00025
