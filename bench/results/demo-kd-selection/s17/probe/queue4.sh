#!/bin/bash
cd /work/main
P=".venv/bin/python /tmp/s17/probe.py"
$P --name scratch-wd1e-3 --scratch --distill weight_decay=0.001
$P --name wd1e-4 --distill weight_decay=0.0001
$P --name T8 --param temperature=8.0
$P --name scratch-wd2.5e-4 --scratch --distill weight_decay=0.00025
