"""Celery's side of `make bench`'s handler-threads section (bench/run.sh).

The same work as compworker's there: tasks whose handler waits 50 ms (as a
compensation waits on a payment gateway), run by Celery 5 worker processes
with a pool of threads or of gevent greenlets at a given concurrency, on the
benchmark's own RabbitMQ node. Each task appends its start time (ns,
CLOCK_REALTIME) to a file of its worker process, from which run.sh takes the
rate: (tasks - 1) / (last start - first start).

    CELERY_BENCH_URL=amqp://... CELERY_BENCH_DIR=DIR CELERY_BENCH_SLEEP_MS=50 \\
        python3 -m celery -A celery_bench worker -P threads -c 64 -Q cwbench.celery
    CELERY_BENCH_URL=amqp://... python3 celery_bench.py publish N

Celery's defaults are kept (prefetch multiplier 4, acks on receipt), as a
user of it would run it.
"""
import os
import sys
import time

from celery import Celery

app = Celery("celery_bench", broker=os.environ.get("CELERY_BENCH_URL", "amqp://"))
app.conf.task_default_queue = "cwbench.celery"
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True

_fd = None


@app.task(name="cwbench.sleep", ignore_result=True)
def sleep_task():
    global _fd
    start = time.time_ns()
    if _fd is None:
        path = os.path.join(os.environ["CELERY_BENCH_DIR"], "%d.txt" % os.getpid())
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, b"%d\n" % start)
    time.sleep(int(os.environ.get("CELERY_BENCH_SLEEP_MS", "50")) / 1000.0)


def publish(n):
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            sleep_task.apply_async(producer=producer)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "publish":
        publish(int(sys.argv[2]))
    else:
        sys.exit("usage: celery_bench.py publish N")
