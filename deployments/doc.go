// Package deployments holds no code: its tests check the deployment files
// in this directory against the code they deploy.
//
//   - metrics_test.go: every metric a Grafana dashboard (grafana/dashboards)
//     queries is one the services register, under its Prometheus name.
//   - compose_test.go: the docker compose files (compose/central,
//     compose/branch) load and pass the Compose schema with their
//     .env.example, the Postern configuration each container reads is
//     valid, every binary they run is built by the Dockerfile (the same
//     list as `make build`) and compiles, every file they mount exists,
//     and only the mail ports are published on every interface (the
//     others on 127.0.0.1 by default).
package deployments
