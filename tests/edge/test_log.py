import io
import json
import logging
import threading

from edge.log import bind_thread, configure, get_logger


class TestLogging:
    def test_json_when_not_a_tty(self):
        """Not a TTY: one JSON object per line with ISO UTC timestamp, level and the event's fields."""
        stream = io.StringIO()
        configure("info", "auto", stream=stream)
        get_logger("t").info("frame_dropped", camera="line3", seq=1042)
        record = json.loads(stream.getvalue().strip().splitlines()[-1])
        assert record["event"] == "frame_dropped" and record["seq"] == 1042 and record["level"] == "info"
        assert record["timestamp"].endswith("Z") and "T" in record["timestamp"]

    def test_stdlib_loggers_routed(self):
        """A third-party stdlib logger (paho) comes out through the same JSON renderer."""
        stream = io.StringIO()
        configure("debug", "json", stream=stream)
        logging.getLogger("paho").warning("socket error %s", "x")
        record = json.loads(stream.getvalue().strip().splitlines()[-1])
        assert record["event"] == "socket error x" and record["logger"] == "paho"

    def test_context_bound_per_thread(self):
        """Context bound in a thread shows on that thread's events, not on another's."""
        stream = io.StringIO()
        configure("info", "json", stream=stream)

        def worker():
            bind_thread(stage="infer", camera="cam0")
            get_logger().info("tick")

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        get_logger().info("main")
        lines = [json.loads(x) for x in stream.getvalue().strip().splitlines()]
        assert lines[-2]["stage"] == "infer" and lines[-2]["camera"] == "cam0"
        assert "stage" not in lines[-1]

    def test_level_filters(self):
        """Below the configured level nothing is written."""
        stream = io.StringIO()
        configure("warning", "json", stream=stream)
        get_logger().info("quiet")
        assert stream.getvalue() == ""
