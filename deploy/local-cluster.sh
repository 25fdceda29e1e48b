#!/usr/bin/env bash
# A dask scheduler and N workers as plain processes on 127.0.0.1.
#   deploy/local-cluster.sh start [-n WORKERS] [-p PORT] [-t THREADS] [-m MEMORY] [-d DIR]
#   deploy/local-cluster.sh status [-d DIR]
#   deploy/local-cluster.sh stop [-d DIR]
# start writes DIR/scheduler.json (pass it as --scheduler), DIR/*.pid and DIR/*.log and prints the address.
# Defaults: 2 workers, port 8786 (0: any free port), 2 threads, memory 0.8 x RAM / workers (as filtershift.cluster),
# DIR ./.filtershift-cluster. DASK: the dask command (default: dask, else python3 -m dask).
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

action="${1:-}"
[ -n "$action" ] || usage
shift
workers=2 port=8786 threads=2 memory="" dir=./.filtershift-cluster
while getopts "n:p:t:m:d:h" opt; do
    case "$opt" in
        n) workers="$OPTARG" ;;
        p) port="$OPTARG" ;;
        t) threads="$OPTARG" ;;
        m) memory="$OPTARG" ;;
        d) dir="$OPTARG" ;;
        *) usage ;;
    esac
done

if [ -n "${DASK:-}" ]; then
    read -r -a dask_cmd <<< "$DASK"
elif command -v dask > /dev/null; then
    dask_cmd=(dask)
else
    dask_cmd=(python3 -m dask)
fi
if command -v setsid > /dev/null; then launch=(setsid); else launch=(); fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null; }

stop_pidfile() {
    local pidfile="$1" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    kill -TERM -- "-$pid" 2> /dev/null || kill -TERM "$pid" 2> /dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2> /dev/null || kill -KILL "$pid" 2> /dev/null || true
    rm -f "$pidfile"
}

if [ -z "$memory" ]; then
    if [ -r /proc/meminfo ]; then
        memory="$(awk -v n="$workers" '/^MemTotal:/ { printf "%.0f", $2 * 1024 * 0.8 / (n > 0 ? n : 1) }' /proc/meminfo)"
    else
        memory=auto
    fi
fi

case "$action" in
start)
    mkdir -p "$dir"
    if alive "$dir/scheduler.pid"; then
        echo "local-cluster: already running (pid $(cat "$dir/scheduler.pid")); run '$0 stop -d $dir' first" >&2
        exit 1
    fi
    rm -f "$dir/scheduler.json"
    "${launch[@]}" "${dask_cmd[@]}" scheduler --host 127.0.0.1 --port "$port" --dashboard-address 127.0.0.1:0 \
        --scheduler-file "$dir/scheduler.json" > "$dir/scheduler.log" 2>&1 < /dev/null &
    echo $! > "$dir/scheduler.pid"
    for _ in $(seq 1 300); do
        [ -s "$dir/scheduler.json" ] && break
        if ! alive "$dir/scheduler.pid"; then
            echo "local-cluster: the scheduler exited; see $dir/scheduler.log:" >&2
            tail -n 15 "$dir/scheduler.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [ ! -s "$dir/scheduler.json" ]; then
        echo "local-cluster: no scheduler file after 30 s; see $dir/scheduler.log" >&2
        stop_pidfile "$dir/scheduler.pid"
        exit 1
    fi
    for i in $(seq 0 $((workers - 1))); do
        "${launch[@]}" "${dask_cmd[@]}" worker --scheduler-file "$dir/scheduler.json" --host 127.0.0.1 \
            --nthreads "$threads" --memory-limit "$memory" --no-dashboard --name "worker-$i" \
            --local-directory "$dir/worker-$i" --death-timeout 60 > "$dir/worker-$i.log" 2>&1 < /dev/null &
        echo $! > "$dir/worker-$i.pid"
    done
    address="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$dir/scheduler.json")"
    echo "scheduler $address"
    echo "scheduler-file $dir/scheduler.json"
    echo "workers $workers (joining; 'status' counts the running ones)"
    ;;
status)
    if alive "$dir/scheduler.pid"; then
        echo "scheduler running (pid $(cat "$dir/scheduler.pid"))"
    else
        echo "scheduler not running"
    fi
    running=0
    for f in "$dir"/worker-*.pid; do
        if alive "$f"; then running=$((running + 1)); fi
    done
    echo "workers running $running"
    alive "$dir/scheduler.pid"
    ;;
stop)
    for f in "$dir"/worker-*.pid; do
        stop_pidfile "$f" &
    done
    wait
    stop_pidfile "$dir/scheduler.pid"
    rm -f "$dir/scheduler.json"
    echo "stopped"
    ;;
*)
    usage
    ;;
esac
