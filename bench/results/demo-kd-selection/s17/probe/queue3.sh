#!/bin/bash
cd /work/main
while pgrep -f "queue.sh" >/dev/null; do sleep 10; done
P=".venv/bin/python /tmp/s17/probe.py"
$P --name b64-60ep-lr0.05 --param student_batch_size=64 --param student_epochs=60
$P --name scratch-b64-60ep-lr0.025 --scratch --param student_batch_size=64 --param student_epochs=60
$P --name b64-60ep-lr0.1 --param student_batch_size=64 --param student_epochs=60 --param student_learning_rate=0.1
$P --name scratch-b64-60ep-lr0.05 --scratch --param student_batch_size=64 --param student_epochs=60 --param scratch_learning_rate=0.05
$P --name T8 --param temperature=8.0
