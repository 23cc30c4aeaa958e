// Command kstatus prints the status that kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library
// Flux uses for health checks, computes for each Kubernetes object it reads.
//
// Usage: kstatus [FILE...]   (no FILE or "-": standard input); kstatus --version
//
// Input: YAML or JSON, several documents, Lists flattened. Output: one JSON object per object read, one a
// line: {"kind", "namespace", "name", "status", "message"}. Exit 1 when an input cannot be read.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// cliUtilsVersion is set at build time (hack/build-control-plane.sh) from hack/tools/versions.env.
var cliUtilsVersion = "unknown"

type verdict struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

// objects reads every object of a YAML or JSON stream, with the items of Lists in their place.
func objects(input io.Reader) ([]*unstructured.Unstructured, error) {
	decoder := utilyaml.NewYAMLOrJSONDecoder(input, 4096)
	var found []*unstructured.Unstructured
	for {
		var document json.RawMessage
		if err := decoder.Decode(&document); err != nil {
			if errors.Is(err, io.EOF) {
				return found, nil
			}
			return nil, err
		}
		// Kubernetes' JSON reading keeps whole numbers int64, as kstatus's accessors expect.
		var content map[string]interface{}
		if err := utiljson.Unmarshal(document, &content); err != nil {
			return nil, err
		}
		if content == nil { // an empty document
			continue
		}
		object := &unstructured.Unstructured{Object: content}
		if object.IsList() {
			list, err := object.ToList()
			if err != nil {
				return nil, err
			}
			for i := range list.Items {
				found = append(found, &list.Items[i])
			}
			continue
		}
		found = append(found, object)
	}
}

func run(path string, out *json.Encoder) error {
	var input io.Reader = os.Stdin
	if path != "-" {
		file, err := os.Open(path)
		if err != nil {
			return err
		}
		defer file.Close()
		input = file
	}
	found, err := objects(input)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, object := range found {
		result, err := status.Compute(object)
		if err != nil {
			return fmt.Errorf("%s: %s %s: %w", path, object.GetKind(), object.GetName(), err)
		}
		if err := out.Encode(verdict{
			Kind:      object.GetKind(),
			Namespace: object.GetNamespace(),
			Name:      object.GetName(),
			Status:    result.Status.String(),
			Message:   result.Message,
		}); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	paths := os.Args[1:]
	if len(paths) == 1 && paths[0] == "--version" {
		fmt.Println("sigs.k8s.io/cli-utils", cliUtilsVersion)
		return
	}
	if len(paths) == 0 {
		paths = []string{"-"}
	}
	out := json.NewEncoder(os.Stdout)
	for _, path := range paths {
		if err := run(path, out); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
	}
}
