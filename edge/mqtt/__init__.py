"""MQTT: the PLC-facing side of the daemon, in three parts that can be read and supervised on their own.

- `connection.py`: one paho client, its persistent session, Will and birth, reconnects and outage logs;
- `results.py`: the results sink (a `Sink`): verdicts through the on-disk `spool.py`, masks, stats;
- `triggers.py`: the trigger input: `<prefix>/trigger` messages to the pipeline, acknowledged once judged.

Topics under `mqtt.topic_prefix` (default `inspectd/<line>/<station>`):

    status       retained "online" (once subscribed: ready for triggers) / "offline" (Will, and on close), QoS 1
    status/info  retained JSON birth message (version, bundle, source, thresholds), published with "online"
    result       one compact JSON verdict per frame (QoS `mqtt.qos`, not retained); schema: edge/result.schema.json
    mask         1-bit PNG of the defect mask (per `mqtt.publish_mask`); MQTT 5: content type image/png and user
                 properties seq and frame_id; MQTT 3.1.1 (no properties): topic mask/<seq>
    stats        JSON pipeline statistics (QoS 0), plus an "mqtt" block: connected, spool depth, drops, failures
    trigger      subscribed (QoS 1) in triggered mode: {"part_id": "..."} starts one inspection
"""
