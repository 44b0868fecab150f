// Package events is the contract of Postern's Kafka topics: their names and
// the versioned records that travel on them.
//
// Records that carry mail have the raw RFC 5322 message as their value and
// the envelope in headers; the other records are JSON values. Every record
// names its type and schema version in the headers HeaderType and
// HeaderVersion, so a consumer can refuse what it does not understand.
package events

// Logical topic names. A site may share a Kafka cluster with other sites by
// configuring a topic prefix; use Topic to build the name on the wire.
const (
	// TopicInbound carries every message entering a site (POP3 download or
	// SMTP in) to the router. Value: raw RFC 5322; envelope in headers.
	TopicInbound = "mail.inbound"
	// TopicDelivery carries one record per destination from the router to
	// the relay. Value: the message as it must be delivered.
	TopicDelivery = "mail.delivery"
	// TopicStatus carries delivery outcomes per recipient. Value: JSON.
	TopicStatus = "mail.status"
	// TopicDeadLetter receives records that could not be processed, with
	// the DeadLetter* headers added to the original ones.
	TopicDeadLetter = "mail.deadletter"
	// TopicDirectoryChanges is the users service's change log. Value: JSON.
	TopicDirectoryChanges = "directory.changes"
)

// AllTopics lists every topic a site creates at start-up.
var AllTopics = []string{TopicInbound, TopicDelivery, TopicStatus, TopicDeadLetter, TopicDirectoryChanges}

// Topic returns the wire name of a logical topic under a site prefix:
// Topic("hq", "mail.inbound") is "hq.mail.inbound"; an empty prefix leaves
// the name as it is.
func Topic(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// Headers a dead-letter record carries in addition to the original record's
// headers.
const (
	HeaderDeadLetterReason    = "postern-dlq-reason"    // why the record could not be handled
	HeaderDeadLetterTopic     = "postern-dlq-topic"     // the topic it was read from (wire name)
	HeaderDeadLetterPartition = "postern-dlq-partition" // its partition, decimal
	HeaderDeadLetterOffset    = "postern-dlq-offset"    // its offset, decimal
	HeaderDeadLetterHandler   = "postern-dlq-handler"   // the handler (consumer) that gave up
	HeaderDeadLetterGroup     = "postern-dlq-group"     // the consumer group
	HeaderDeadLetterAttempts  = "postern-dlq-attempts"  // how many times it was tried, decimal
	HeaderDeadLetterTime      = "postern-dlq-time"      // when it was dead-lettered, RFC 3339
)

// Headers every Postern record carries.
const (
	HeaderType    = "postern-type"    // the record type, e.g. "mail.inbound"
	HeaderVersion = "postern-version" // the schema version of that type, e.g. "1"
)
