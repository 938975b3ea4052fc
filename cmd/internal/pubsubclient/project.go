package pubsubclient

import "os"

// DefaultProject is the project the commands use when the environment names
// none: the emulator's, so that the local commands find each other's topics
// without flags.
const DefaultProject = "local-project"

// Project reads the environment the gcloud emulator and Cloud Run set,
// falling back to DefaultProject.
func Project() string {
	for _, name := range []string{"PUBSUB_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"} {
		if v := os.Getenv(name); v != "" {
			return v
		}
	}
	return DefaultProject
}
