"""meshsim: a discrete-event simulator of service call chains behind an Istio/Envoy service mesh."""

__version__ = "0.1.0"
