"""A device simulator for ThingCloud (``thingcloud simulate``): a fleet of devices of one device type
that send readings fitting its manifest over HTTP, the WebSocket device channel or MQTT, and act on
the actions they receive. ``readings`` makes the data, ``fleet`` sets the devices up through the REST
API, ``transports`` speaks the protocols, ``runner`` schedules, stops and sums up.
"""

from thingcloud.simulator.fleet import SimulatorError
from thingcloud.simulator.runner import SimulationConfig, Summary, simulate

__all__ = ["SimulationConfig", "SimulatorError", "Summary", "simulate"]
