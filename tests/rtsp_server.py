"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving a live test pattern on 127.0.0.1.

    python tests/rtsp_server.py PORT

Mount /test: videotestsrc (live, 10 fps, 160x120) -> JPEG -> RTP (RFC 2435), which FFmpeg (OpenCV's RTSP reader)
decodes over RTSP-over-TCP. Exits 3 when PyGObject or the GstRtspServer typelib is missing, so the fixture can
skip with the reason.
"""

from __future__ import annotations

import sys

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as exc:
    print(f"missing: {exc} (apt-get install gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good)", file=sys.stderr)
    sys.exit(3)

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=10/1 "
    "! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26 )"
)


def main() -> None:
    """Serve until killed."""
    Gst.init(None)
    if Gst.ElementFactory.find("jpegenc") is None or Gst.ElementFactory.find("rtpjpegpay") is None:
        print("missing GStreamer elements jpegenc/rtpjpegpay (gstreamer1.0-plugins-good)", file=sys.stderr)
        sys.exit(3)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)  # one pipeline for every client, as a camera has
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{sys.argv[1]}", file=sys.stderr)
        sys.exit(1)
    print(f"serving rtsp://127.0.0.1:{sys.argv[1]}/test", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
