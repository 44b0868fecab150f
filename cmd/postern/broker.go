package main

import (
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
)

// BrokerConfig is the configuration of `postern broker`: the common keys
// (site, log, telemetry, bus, broker, state, shutdown_timeout), of which it
// uses the broker section (listen, data_dir, sync_writes) and the bus
// section (max_record_bytes for the broker's message.max.bytes; topic_prefix,
// partitions and replication_factor for the topics it creates at start).
type BrokerConfig struct {
	app.Common `yaml:",inline"`
}

// DefaultBrokerConfig is the embedded broker on 127.0.0.1:19092 with its
// data in ./var/broker, as in `postern serve`.
func DefaultBrokerConfig() BrokerConfig {
	c := BrokerConfig{Common: app.DefaultCommon()}
	c.Broker.Listen = "127.0.0.1:19092"
	return c
}

// Validate refuses bus.brokers: the command is the broker.
func (c BrokerConfig) Validate() error {
	if len(c.Bus.Brokers) > 0 {
		return config.Errorf("bus.brokers", "must be empty: postern broker runs the embedded broker itself (services point their bus.brokers at its broker.listen)")
	}
	return nil
}

// brokerProgram is `postern broker`: the embedded Kafka-protocol broker
// (internal/broker, the one `postern serve` starts) alone in its process,
// with its data directory, until a signal. Services in processes of their
// own (`postern serve` with a subset of services, or their own binaries)
// share it by setting bus.brokers to its address, so a site can run its
// services as separate processes without a Kafka cluster, and a service
// process can die and restart without taking the mail in flight with it.
// At start it creates every Postern topic (bus.topic_prefix,
// bus.partitions), so the first service to start finds them.
func brokerProgram() app.Program {
	cfg := DefaultBrokerConfig()
	return app.Program{
		Name:    "postern-broker",
		Version: version,
		Config:  &cfg,
		Common:  func() *app.Common { return &cfg.Common },
		Needs:   func() app.Needs { return app.Needs{Bus: true} },
		// No service: the runtime's broker is the whole work; Run blocks
		// until a signal, then the runtime closes the broker, which
		// persists its state to broker.data_dir.
		Units: func(*app.Runtime) ([]app.Unit, error) { return nil, nil },
	}
}
